"""DePT (Shi & Lipani, 2023, "Decomposed Prompt Tuning"): a shorter soft prompt plus a low-rank
update of the input token embeddings, trained with two learning rates."""

from __future__ import annotations

import torch
from pydantic import Field

from ..prompts.reparam import DecomposedPrompt
from .base import register
from .family.soft import SoftPromptConfig, SoftPromptMethod


class DeptConfig(SoftPromptConfig):
    n_tokens: int = Field(10, ge=1, description="length of the (shorter) soft prompt")
    max_length: int = Field(256, ge=1, description="input positions that get the low-rank update")
    rank: int = Field(6, ge=1, description="rank of the update A (max_length x r) @ B (r x hidden)")
    lr_lowrank: float = Field(1e-4, gt=0, description="peak learning rate of A and B (lr is the prompt's)")


@register
class Dept(SoftPromptMethod):
    name = "dept"
    description = "DePT (Shi & Lipani): shorter soft prompt + low-rank update of input embeddings, two lrs."
    Config = DeptConfig

    def build_prompt(self, init: torch.Tensor) -> torch.nn.Module:
        cfg: DeptConfig = self.config  # type: ignore[assignment]
        return DecomposedPrompt(init, cfg.max_length, cfg.rank)

    def param_groups(self, module: torch.nn.Module) -> list[dict]:
        cfg: DeptConfig = self.config  # type: ignore[assignment]
        return [{"params": [module.weight], "lr_scale": 1.0},
                {"params": [module.a, module.b], "lr_scale": cfg.lr_lowrank / cfg.lr}]
