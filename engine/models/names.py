"""Public model ids: what clients see and send instead of the config's values.

The config names a model by whisper name (`large-v3`), by checkpoint path or by a
CTranslate2 directory; a path says where things live on the server, so it never goes out.
Each configured model gets an id:

- a whisper model name is its own id (`large-v3`, `tiny.en`);
- a checkpoint file is its stem (`/models/tiny.en.pt` -> `tiny.en`);
- a directory is its name, except a Hugging Face cache snapshot (`.../models--Systran--
  faster-whisper-large-v3/snapshots/<hash>`), which is named after its repository
  (`faster-whisper-large-v3`);
- two models with the same id keep it in config order: the first has it plain, the next get
  `-2`, `-3`, ... (`/a/large-v3.pt`, `/b/large-v3.pt` -> `large-v3`, `large-v3-2`).

OpenAI's own model names (`whisper-1`, `gpt-4o-transcribe`, `gpt-4o-mini-transcribe`) are
aliases of the default model, so clients written for OpenAI work unchanged; an id never
takes one of them. A configured value that is not its own id (a path) is not accepted as a
model either: it would be answered differently from any other path and so confirm where the
weights live. Jobs stored by older versions with a path are shown by `public`.
"""

from __future__ import annotations

import re
from pathlib import Path

DIARIZE_ALIAS = "gpt-4o-transcribe-diarize"  # OpenAI's diarizing model: the default model, diarization on
# served by the default model
OPENAI_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", DIARIZE_ALIAS)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin")
_SNAPSHOT_HASH = re.compile(r"^[0-9a-f]{40}$")


def _whisper_names() -> list[str]:
    import whisper

    return whisper.available_models()


def model_id(spec: str) -> str:
    """The id a configured model value would have on its own (before duplicates are numbered)."""
    if spec in _whisper_names():
        return spec
    path = Path(spec.rstrip("/\\"))
    if (
        path.parent.name == "snapshots"
        and path.parent.parent.name.startswith("models--")
        and _SNAPSHOT_HASH.match(path.name)
    ):
        return path.parent.parent.name.split("--")[-1]
    name = path.name
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return name or "model"


def english_only_by_name(model: str) -> bool | None:
    """What the name alone tells: True for `*.en` (whisper's English-only models, and files or
    directories named after them), False for whisper's multilingual names, None = unknown
    until the weights are loaded (their vocabulary says)."""
    if model in _whisper_names():
        return model.endswith(".en")
    return True if model_id(model).endswith(".en") else None


class ModelNames:
    """The configured models (default first) under their public ids."""

    def __init__(self, specs: list[str]):
        self.by_id: dict[str, str] = {}  # public id -> configured value
        for spec in dict.fromkeys(specs):
            base = candidate = model_id(spec)
            number = 2
            while candidate in self.by_id or candidate in OPENAI_ALIASES:
                candidate, number = f"{base}-{number}", number + 1
            self.by_id[candidate] = spec
        self._id_of = {spec: public for public, spec in self.by_id.items()}
        self.default_id = next(iter(self.by_id))

    @property
    def ids(self) -> list[str]:
        return list(self.by_id)

    def resolve(self, name: str | None) -> str | None:
        """The configured value for an id or an alias (empty = the default); None for anything
        else, a configured path included."""
        if not name or name in OPENAI_ALIASES:
            return self.by_id[self.default_id]
        return self.by_id.get(name)

    def not_offered(self, name: str | None) -> str:
        """What to tell a client that asked for `name`, which `resolve` refused. A path is not
        echoed, so the answer reads the same for the configured path as for any other."""
        shown = "a file path" if name and re.search(r"[/\\]", name) else repr(name)
        return (
            f"model: {shown} is not offered here; choose one of {', '.join(self.ids)} "
            f"(or {', '.join(OPENAI_ALIASES)} for the default, {self.default_id})"
        )

    def public(self, name: str | None) -> str:
        """The id to show for a model: its id when configured, else (a stored job's model that
        the config no longer offers) what its name alone gives, never a path."""
        if not name:
            return self.default_id
        if name in self.by_id:
            return name
        return self._id_of.get(name) or model_id(name)
