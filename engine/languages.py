"""Language names and codes as whisper knows them."""

from __future__ import annotations

from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

AUTO = "auto"  # what the UI and the API send for "detect the language"


def normalise_language(value: str | None) -> str | None:
    """'English', 'en' or 'EN' -> 'en'; None, '' or 'auto' -> None (detect). ValueError otherwise."""
    if value is None:
        return None
    key = value.strip().lower()
    if key in ("", AUTO):
        return None
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise ValueError(
        f"language: '{value}' is not a language whisper knows; use a code such as en, de, fr, "
        "a name such as English, or leave it empty to detect it"
    )


def language_choices() -> dict[str, str]:
    """Display name -> code, sorted by name, for drop-downs."""
    return {name.title(): code for code, name in sorted(LANGUAGES.items(), key=lambda kv: kv[1])}
