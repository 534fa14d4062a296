"""P-tuning v2 / deep prompt tuning (Liu et al., 2022): trainable keys and values at every layer,
without reparameterisation, started from the keys/values of the initial prompt text."""

from __future__ import annotations

import torch

from ..prompts.deep import DeepPrompt
from ..prompts.deep import kv_shape as _kv_shape
from .base import register
from .family.soft import SoftPromptConfig, SoftPromptMethod


@register
class PTuningV2(SoftPromptMethod):
    name = "p-tuning-v2"
    description = "Deep prompt tuning (P-tuning v2): per-layer key/value prompts, no reparameterisation."
    Config = SoftPromptConfig

    def build_prompt(self, init: torch.Tensor) -> torch.nn.Module:
        self.backbone.check_prefix_support(f"method '{self.name}'")
        return DeepPrompt(self.backbone.prefix_from_embeddings(init))

    def count_trainable(self, model_config) -> int:
        layers, heads, head_dim = _kv_shape(model_config)
        return 2 * layers * heads * self.config.n_tokens * head_dim  # type: ignore[attr-defined]
