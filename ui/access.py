"""Who may use the HTTP API, whose jobs are whose, and what is open to whom.

API keys have names (`api_keys: {alice: "...", bob: "..."}`; the one-key form `api_key` is
named "default"). A request's key is looked up among them (compared in constant time) and
its *name* becomes the owner of the jobs it creates, stored as "api:<name>": the key
itself is never written anywhere. With no key configured, every API caller is
"anonymous" and sees every API job: the API is then as open as the port it listens on.

Page jobs belong to their browser ("browser:<id>") or login ("user:<name>"), so no API key
can reach them and no page user can reach an API job.
"""

from __future__ import annotations

import hmac
import ipaddress

from engine import Settings
from jobs import ANONYMOUS_CALLER as ANONYMOUS
from jobs import api_owner  # noqa: F401  (the routes name owners through this module)


class KeyRing:
    """The configured API keys by name; `caller(authorization_header)` is the caller's name or None."""

    def __init__(self, keys_by_name: dict[str, str]):
        self._keys = [(name, key.encode()) for name, key in keys_by_name.items()]

    @property
    def open(self) -> bool:
        """No key configured: every caller is anonymous."""
        return not self._keys

    def name_of(self, token: str) -> str | None:
        presented = token.encode()
        found = None
        for name, key in self._keys:  # every key compared, so the time says nothing about which matched
            if hmac.compare_digest(presented, key):
                found = name
        return found

    def caller(self, authorization: str) -> str | None:
        """The caller an Authorization header names: its key's name ("anonymous" when no key
        is configured), None for a missing or wrong key or another scheme than Bearer."""
        if self.open:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        return self.name_of(token.strip()) if scheme.lower() == "bearer" else None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warnings(settings: Settings) -> list[str]:
    """Sentences saying what is open to whom, when the server is reachable beyond this machine
    (a non-loopback `host`, or `share`) without the protection a reader would expect."""
    if is_loopback(settings.host) and not settings.share:
        return []
    where = "a public share link" if settings.share else f"{settings.host}:{settings.port}"
    warnings = []
    if not settings.named_api_keys:
        warnings.append(
            f"No API key is set and the server is reachable on {where}: anyone who reaches it can use "
            "the HTTP API "
            "(/v1) to transcribe, and can list, read and cancel every job sent through the API, with its "
            "transcript; /metrics and /healthz are open too. Set api_keys (or api_key) in the config."
        )
    if settings.auth is None:
        warnings.append(
            f"No login (auth) is set and the server is reachable on {where}: anyone who reaches it can "
            "use the "
            "page and its /transcribe endpoint (gradio_client) to transcribe on this server"
            + (", whatever the API key" if settings.named_api_keys else "")
            + '. Set auth: "user:password" in the config (or WHISPER_APP_AUTH).'
        )
    if settings.named_api_keys and not settings.protect_metrics:
        warnings.append(
            f"/metrics and /healthz answer anyone on {where} (queue, GPU and job counts); "
            "set protect_metrics: true to require an API key."
        )
    return warnings
