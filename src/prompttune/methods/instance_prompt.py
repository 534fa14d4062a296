"""Instance-dependent prompts (IDPG, Wu et al., 2022, "IDPG: An Instance-Dependent Prompt Generation
Method"): a lightweight generator turns each input's representation into its own soft prompt."""

from __future__ import annotations

import torch
from pydantic import Field

from ..prompts.instance import InstancePrompt
from .base import register
from .family.soft import SoftPromptConfig, SoftPromptMethod


class InstancePromptConfig(SoftPromptConfig):
    n_tokens: int = Field(5, ge=1, description="length of each generated prompt")
    bottleneck: int = Field(32, ge=1, description="hidden width of the generator")
    lr: float = Field(0.01, gt=0, description="peak learning rate (AdamW)")


@register
class InstancePromptTuning(SoftPromptMethod):
    name = "instance-prompt"
    description = "IDPG: a small generator maps each input's pooled representation to its own soft prompt."
    Config = InstancePromptConfig

    def build_prompt(self, init: torch.Tensor) -> torch.nn.Module:
        return InstancePrompt(init, self.config.bottleneck)  # type: ignore[attr-defined]
