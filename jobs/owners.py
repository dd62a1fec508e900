"""Who a job belongs to: the owner stored with it, compared on every read, cancel and delete.

API jobs belong to the name of the key that sent them (`api:<name>`, never the key itself);
page jobs to their browser (`browser:<id>`) or login (`user:<login>`), so the two never meet.
"""

from __future__ import annotations

ANONYMOUS_CALLER = "anonymous"  # the API caller's name when no API key is configured


def api_owner(key_name: str) -> str:
    """The owner stored with a job sent through the API with the key called `key_name`: the
    name, never the key. Page owners are "browser:<id>" or "user:<login>", so they never meet."""
    return f"api:{key_name}"


def legacy_api_owner(key_names: list[str]) -> str | None:
    """Who gets the ownerless API jobs of a database from before keys had names: the config's
    only key (then as now, its holder saw them all), "anonymous" when the API is open, none
    when there are several keys (their jobs cannot be told apart)."""
    if not key_names:
        return api_owner(ANONYMOUS_CALLER)
    return api_owner(key_names[0]) if len(key_names) == 1 else None
