"""MaPLe (Khattak et al., 2023): coupled vision-language deep prompts.

Text prompts at the input and at text layers 1..depth-1 (replacing the context tokens there); the
image tower gets at each of its first `depth` layers the tokens a per-layer linear coupling
function makes from that layer's text prompt, so both towers are prompted by one set of learned
vectors. The image side is prompted, so images go through the tower at every step.
"""

from __future__ import annotations

from pydantic import Field

from ..models.clip import ClipBackbone
from ..prompts.clip import PromptShape
from .base import register
from .family.clip import ClipConfig, ClipMethod


class MaPLeConfig(ClipConfig):
    n_tokens: int = Field(2, ge=1, le=32)
    ctx_init: str | None = "a photo"
    depth: int = Field(9, ge=1, description="prompted layers per tower (capped at the towers' depth)")
    lr: float = Field(0.0035, gt=0)


@register
class MaPLe(ClipMethod):
    name = "maple"
    description = "MaPLe: deep text prompts coupled to deep vision prompts by linear functions."
    Config = MaPLeConfig

    def prompt_shape(self, backbone: ClipBackbone) -> PromptShape:
        depth = min(self.config.depth, backbone.text_depth, backbone.vision_depth)
        return PromptShape(n_ctx=self.config.n_tokens, text_depth=depth - 1, vision_depth=depth,
                           n_vision=self.config.n_tokens, coupled=True)
