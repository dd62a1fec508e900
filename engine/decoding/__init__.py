"""The decoding core: options, a section's seek state (stream), the decode loop shared by every job,
the greedy decoder and the whole-window one (sampling), temperature fallback, word timing, batch memory."""
