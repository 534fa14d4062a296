"""Residual prompt tuning (Razdaibiedina et al., ACL Findings 2023): the soft prompt passes through a
shallow bottleneck MLP with a skip connection; after training the network is folded away."""

from __future__ import annotations

import torch
from pydantic import Field

from ..prompts.reparam import ResidualPrompt
from .base import register
from .family.soft import SoftPromptConfig, SoftPromptMethod


class ResidualPromptTuningConfig(SoftPromptConfig):
    bottleneck: int = Field(128, ge=1, description="width of the MLP's bottleneck")


@register
class ResidualPromptTuning(SoftPromptMethod):
    name = "residual-prompt-tuning"
    description = "Residual PT (Razdaibiedina et al.): prompt + LayerNorm(MLP(prompt)), folded at save time."
    Config = ResidualPromptTuningConfig

    def build_prompt(self, init: torch.Tensor) -> torch.nn.Module:
        return ResidualPrompt(init, self.config.bottleneck)  # type: ignore[attr-defined]
