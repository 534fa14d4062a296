"""Low-rank prompt tuning (LoPT): the prompt matrix is U @ V of rank r, so it trains far fewer
parameters than a full prompt of the same length."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from ..prompts.reparam import LowRankPrompt
from .base import register
from .family.soft import SoftPromptConfig, SoftPromptMethod


class LoptConfig(SoftPromptConfig):
    rank: int = Field(4, ge=1, description="rank r of the factorisation U (n_tokens x r) @ V (r x hidden)")

    @model_validator(mode="after")
    def _rank_fits_the_prompt(self) -> LoptConfig:
        if self.rank > self.n_tokens:
            raise ValueError(f"rank {self.rank} is larger than the prompt (n_tokens {self.n_tokens})")
        return self


@register
class LowRankPromptTuning(SoftPromptMethod):
    name = "lopt"
    description = "Low-rank prompt tuning (LoPT): the prompt factorised as U @ V with rank r."
    Config = LoptConfig

    def build_prompt(self, init: torch.Tensor) -> torch.nn.Module:
        return LowRankPrompt(init, self.config.rank)  # type: ignore[attr-defined]
