"""The device a model runs on: CUDA set-up and precision, CPU threads, the GPU monitor."""
