"""Prefix-tuning (Li & Liang, 2021): every layer's prefix keys/values come from an MLP over a small
per-position embedding during training; at save time the MLP is folded away into plain keys/values."""

from __future__ import annotations

import torch
from pydantic import Field

from ..prompts.deep import PrefixPrompt
from ..prompts.deep import kv_shape as _kv_shape
from .base import register
from .family.soft import SoftPromptConfig, SoftPromptMethod


class PrefixTuningConfig(SoftPromptConfig):
    lr: float = Field(3e-4, gt=0, description="peak learning rate (AdamW) for the reparameterisation MLP")
    embed_dim: int = Field(256, ge=1, description="size of each prefix position's embedding")
    hidden: int = Field(256, ge=1, description="hidden width of the reparameterisation MLP")


@register
class PrefixTuning(SoftPromptMethod):
    name = "prefix-tuning"
    description = "Prefix-tuning (Li & Liang): per-layer key/value prefixes from an MLP, folded at save time."
    Config = PrefixTuningConfig

    def build_prompt(self, init: torch.Tensor) -> torch.nn.Module:
        cfg: PrefixTuningConfig = self.config  # type: ignore[assignment]
        self.backbone.check_prefix_support(f"method '{self.name}'")
        return PrefixPrompt(self.backbone.prefix_from_embeddings(init), cfg.embed_dim, cfg.hidden)

    def count_trainable(self, model_config) -> int:
        cfg: PrefixTuningConfig = self.config  # type: ignore[assignment]
        layers, heads, head_dim = _kv_shape(model_config)
        out = 2 * layers * heads * head_dim
        return cfg.n_tokens * cfg.embed_dim + (cfg.embed_dim + 1) * cfg.hidden + (cfg.hidden + 1) * out
