"""int8 weights for CPU inference: PyTorch's dynamic quantisation of the linear layers.

Linear layers hold most of whisper's weights; dynamic quantisation stores them as int8 and
quantises activations on the fly, about 4x less memory for them and faster matmuls on CPUs
with VNNI/AVX-512. The embedding matrix (also the decoder's output projection) stays fp32.
"""
from __future__ import annotations

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
from whisper import model as whisper_model


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    # whisper subclasses nn.Linear (to cast weights per call), so name its class explicitly.
    return quantize_dynamic(
        model,
        qconfig_spec={whisper_model.Linear: default_dynamic_qconfig, torch.nn.Linear: default_dynamic_qconfig},
        dtype=torch.qint8,
        mapping={whisper_model.Linear: DynamicInt8Linear, torch.nn.Linear: DynamicInt8Linear},
    )
