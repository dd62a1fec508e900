"""whisper's text decoder run over caches that GreedyDecode keeps per row, so rows can join,
leave and sit at different positions in one batch.

    decoder = CachedDecoder(model, host=True)
    rows["cross_k0"], rows["cross_v0"] = decoder.cross_keys_values(block.cross_attn, features)
    states = decoder.forward(rows, tokens, offset)      # keys and values written into rows[...]
    logits = decoder.logits(states[:, -1])

`whisper.decode` grows its kv-cache by `torch.cat` through forward hooks and projects the
audio features for cross-attention on every step. Here keys and values go into preallocated
buffers, cross-attention is projected once per row, and on CPU (`host`) cross-attention is
two matmuls over keys stored transposed: for a single query per row PyTorch's CPU SDPA kernel
is about three times slower, and cross-attention is most of a token step. Each operation is
the model's own module or the same arithmetic in another order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.model import MultiHeadAttention, Whisper


def _heads(x: Tensor, n_head: int) -> Tensor:
    """(batch, ctx, state) -> (batch, head, ctx, state / head), as whisper's qkv_attention views it."""
    return x.view(*x.shape[:2], n_head, -1).permute(0, 2, 1, 3)


def _merge(x: Tensor) -> Tensor:
    return x.permute(0, 2, 1, 3).flatten(start_dim=2)


class CachedDecoder:
    """The decoder blocks of `model` over per-row caches. `host`: the CPU layout of cross-attention."""

    def __init__(self, model: Whisper, host: bool):
        self.model, self.host = model, host
        self.output_int8 = getattr(model.decoder, "int8_output_projection", None)
        self.cross_scale = (model.dims.n_text_state // model.dims.n_text_head) ** -0.5  # SDPA's default scale

    def forward(
        self, rows: dict[str, Tensor], tokens: Tensor, offset: int, positions: Tensor | None = None
    ) -> Tensor:
        """Decoder blocks on `tokens` at positions offset.. (caches filled as it goes);
        returns the final layer-normed states, (batch, len(tokens), state).

        `positions` (one per row) replaces `offset` for a single token per row when the rows
        are at different positions: each row writes its keys and values at its own position
        and attends only up to it."""
        decoder = self.model.decoder
        n = tokens.shape[1]
        if positions is None:
            x = decoder.token_embedding(tokens) + decoder.positional_embedding[offset : offset + n]
            end, mask, index = offset + n, None, None
        else:
            x = decoder.token_embedding(tokens) + decoder.positional_embedding[positions][:, None]
            end = int(positions.max()) + 1
            index = torch.arange(len(positions), device=positions.device)
            mask = (torch.arange(end, device=positions.device) <= positions[:, None])[:, None, None, :]
        x = x.to(rows["cross_k0"].dtype)
        for layer, block in enumerate(decoder.blocks):
            keys, values = rows[f"keys{layer}"], rows[f"values{layer}"]
            cross_k, cross_v = rows[f"cross_k{layer}"], rows[f"cross_v{layer}"]
            attn, heads = block.attn, block.attn.n_head
            h = block.attn_ln(x)
            q = attn.query(h)
            if index is None:
                keys[:, offset:end] = attn.key(h)
                values[:, offset:end] = attn.value(h)
            else:
                keys[index, positions] = attn.key(h)[:, 0]
                values[index, positions] = attn.value(h)[:, 0]
            a = F.scaled_dot_product_attention(
                _heads(q, heads),
                _heads(keys[:, :end], heads),
                _heads(values[:, :end], heads),
                attn_mask=mask,
                is_causal=n > 1 and mask is None,
            )
            x = x + attn.out(_merge(a))
            cross = block.cross_attn
            q = _heads(cross.query(block.cross_attn_ln(x)), heads)
            if self.host:  # cross_k is transposed: (batch, head, state / head, audio ctx)
                a = torch.softmax((q * self.cross_scale) @ cross_k, dim=-1) @ cross_v
            else:
                a = F.scaled_dot_product_attention(q, cross_k, cross_v, is_causal=False)
            x = x + cross.out(_merge(a))
            x = x + block.mlp(block.mlp_ln(x))
        return decoder.ln(x)

    def cross_keys_values(self, cross: MultiHeadAttention, features: Tensor) -> tuple[Tensor, Tensor]:
        """One block's cross-attention keys and values, computed once per row. On CPU the
        keys are stored transposed and both contiguous, so each token step's two matmuls read
        them in order (they are most of the memory a step reads)."""
        heads = cross.n_head
        if not self.host:
            return _heads(cross.key(features), heads), _heads(cross.value(features), heads)
        # one window at a time: int8's dynamic quantisation would scale the rows together
        keys = torch.cat([_heads(cross.key(row[None]), heads) for row in features])
        values = torch.cat([_heads(cross.value(row[None]), heads) for row in features])
        return keys.transpose(-1, -2).contiguous(), values.contiguous()

    def logits(self, x: Tensor) -> Tensor:
        if self.output_int8 is not None:
            return self.output_int8(x.float()).float()
        weight = self.model.decoder.token_embedding.weight
        return (x @ torch.transpose(weight.to(x.dtype), 0, 1)).float()
