"""The web page and the HTTP routes; talks to the engine's public face only (no torch here)."""
