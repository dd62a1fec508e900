"""The device a model runs on: CUDA set-up and precision, CPU threads, the GPU monitor."""

MIB = 2**20  # bytes in a MiB: every memory figure of the engine is in MiB, written "MB" as nvidia-smi does
