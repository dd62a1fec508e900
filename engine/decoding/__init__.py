"""The decoding core: options, a section's seek state (stream), the decode loop shared by every job, the greedy decoder, temperature fallback, word timing and batch memory."""
