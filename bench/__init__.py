"""Benchmarks: throughput and memory of this engine against stock openai-whisper and
faster-whisper, on the same recording and weights. Run `python -m bench --help`;
results and how to read them are in docs/benchmarks.md."""
