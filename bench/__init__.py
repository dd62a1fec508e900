"""Benchmarks: throughput, word error rate and memory of this engine against stock
openai-whisper and faster-whisper, on the same recordings and weights. Run
`python -m bench --help`; the method and the results are in docs/benchmarks.md."""
