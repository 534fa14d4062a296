"""Deep prompts: learned keys/values at every layer instead of embeddings at the input.

`forward()` returns per-layer (keys, values) pairs, each (kv_heads, n_tokens, head_dim), which the
backbone puts in front of every example's attention, exactly where a soft prompt's computed
keys/values would sit. Both modules start from the keys/values the model itself computes for the
initial prompt text, so at step 0 they behave exactly like prompt tuning's initial prompt
(Li & Liang found initialising with real words' activations matters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def kv_shape(model_config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder from its HF config."""
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return model_config.num_hidden_layers, kv_heads, head_dim


def _stack(prefix: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.stack([k.detach().float().cpu() for k, _ in prefix])  # (layers, kv_heads, n_tokens, head_dim)
    values = torch.stack([v.detach().float().cpu() for _, v in prefix])
    return keys, values


class DeepPrompt(nn.Module):
    """P-tuning v2 / deep prompt tuning: the per-layer keys and values are the parameters."""

    kind = "kv"

    def __init__(self, init: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        keys, values = _stack(init)
        self.keys = nn.Parameter(keys)
        self.values = nn.Parameter(values)

    def forward(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.keys, self.values, strict=True))


class PrefixPrompt(nn.Module):
    """Prefix-tuning (Li & Liang, 2021): a small embedding per prefix position through an MLP
    (Linear, tanh, Linear) that emits every layer's keys and values. The MLP exists only for
    training; the artifact stores its output."""

    kind = "kv"

    def __init__(self, init: Sequence[tuple[torch.Tensor, torch.Tensor]], embed_dim: int = 256,
                 hidden: int = 256):
        super().__init__()
        keys, values = _stack(init)
        self.shape = keys.shape  # (layers, kv_heads, n_tokens, head_dim)
        layers, heads, n_tokens, head_dim = self.shape
        out = layers * 2 * heads * head_dim
        self.embedding = nn.Parameter(torch.randn(n_tokens, embed_dim) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, out))
        # Start exactly at the real words' keys/values: the last layer is solved by least squares so
        # that MLP(embedding) reproduces them (n_tokens <= hidden makes the fit exact).
        target = torch.stack([keys, values], 1).permute(3, 0, 1, 2, 4).reshape(n_tokens, out)
        with torch.no_grad():
            features = self.mlp[1](self.mlp[0](self.embedding))  # (n_tokens, hidden)
            bias = target.mean(0)
            self.mlp[2].bias.copy_(bias)
            self.mlp[2].weight.copy_((torch.linalg.pinv(features) @ (target - bias)).T)

    def forward(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers, heads, n_tokens, head_dim = self.shape
        flat = self.mlp(self.embedding)  # (n_tokens, layers * 2 * heads * head_dim)
        kv = flat.reshape(n_tokens, layers, 2, heads, head_dim).permute(1, 2, 3, 0, 4)
        return [(kv[i, 0], kv[i, 1]) for i in range(layers)]


def kv_to_peft_rows(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(layers, kv_heads, n, head_dim) keys and values -> PEFT prefix-tuning rows (n, layers*2*kv_heads*head_dim),
    in the order PEFT's `get_prompt` unpacks them: per token, layer-major, key before value."""
    n = keys.shape[2]
    return torch.stack([keys, values], 1).permute(3, 0, 1, 2, 4).reshape(n, -1)


def peft_rows_to_kv(rows: torch.Tensor, layers: int, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = rows.shape[0]
    kv = rows.reshape(n, layers, 2, kv_heads, -1).permute(1, 2, 3, 0, 4)  # (layers, 2, heads, n, head_dim)
    return kv[:, 0].contiguous(), kv[:, 1].contiguous()
