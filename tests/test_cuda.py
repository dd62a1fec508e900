"""CUDA set-up at import time: allocator settings, TF32, device choice."""

import logging
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from engine import DeviceError, load_settings
from engine.device.cuda import plan_device

PRINT_STATE = (
    "import os, engine, torch; print(os.environ['PYTORCH_CUDA_ALLOC_CONF']); "
    "print(torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)"
)


def run_import(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", PRINT_STATE], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split("\n")


def test_import_sets_allocator_conf_and_tf32():
    conf, tf32 = run_import({})[:2]
    assert conf == "max_split_size_mb:128"
    assert tf32 == "True True"


def test_user_allocator_conf_wins():
    assert (
        run_import({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})[0] == "expandable_segments:True"
    )


def test_cuda_asked_without_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        plan_device("cuda", 0, "fp16")


def test_cpu_plans():
    assert plan_device("cpu", 0, "fp32").precision == "fp32"
    assert plan_device("cpu", 0, "int8").precision == "int8"


def test_cpu_with_fp16_falls_back_to_fp32_and_says_so(caplog):
    """The default config asks for fp16; a CPU user who only sets device: cpu gets a server."""
    caplog.set_level(logging.WARNING)
    assert load_settings(None, {"device": "cpu", "precision": "fp16"}, environ={}).precision == "fp16"
    plan = plan_device("cpu", 0, "fp16")
    assert str(plan.device) == "cpu" and plan.precision == "fp32"
    assert any("device: cpu" in r.getMessage() and "fp32" in r.getMessage() for r in caplog.records)
