"""int8 weights for CPU inference: PyTorch's dynamic quantisation of the linear layers.

Linear layers hold most of whisper's weights; dynamic quantisation stores them as int8 and
quantises activations on the fly: about 4x less memory for them and faster matmuls on CPUs
with VNNI/AVX-512. The embedding matrix (also the decoder's output projection) stays fp32.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from whisper import model as whisper_model


def _as_plain_linear(module: nn.Module) -> None:
    """whisper subclasses nn.Linear only to cast weights per call; PyTorch's quantiser accepts
    exactly nn.Linear, so swap each for a plain one sharing the same parameters."""
    for name, child in module.named_children():
        if isinstance(child, whisper_model.Linear):
            plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            plain.weight, plain.bias = child.weight, child.bias
            setattr(module, name, plain)
        else:
            _as_plain_linear(child)


def quantize_int8(model: nn.Module) -> nn.Module:
    _as_plain_linear(model)
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the API still works in 2.x.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
