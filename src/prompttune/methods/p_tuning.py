"""P-tuning (Liu et al., 2021, "GPT Understands, Too"): virtual tokens through a prompt encoder (MLP
or bidirectional LSTM). The encoder is saved with the artifact, so training can resume from it."""

from __future__ import annotations

import torch
from pydantic import Field

from ..prompts.reparam import PromptEncoderPrompt
from .base import register
from .family.soft import SoftPromptConfig, SoftPromptMethod


class PTuningConfig(SoftPromptConfig):
    lr: float = Field(3e-3, gt=0, description="peak learning rate (AdamW); the encoder needs a small one")
    encoder: str = Field("mlp", description="mlp | lstm")
    encoder_hidden: int = Field(256, ge=1, description="hidden width of the prompt encoder")


@register
class PTuning(SoftPromptMethod):
    name = "p-tuning"
    description = "P-tuning v1 (Liu et al.): virtual tokens through an MLP or LSTM prompt encoder."
    Config = PTuningConfig

    def build_prompt(self, init: torch.Tensor) -> torch.nn.Module:
        cfg: PTuningConfig = self.config  # type: ignore[assignment]
        return PromptEncoderPrompt(init, cfg.encoder, cfg.encoder_hidden)
