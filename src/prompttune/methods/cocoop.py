"""CoCoOp (Zhou et al., 2022): CoOp's context plus a per-image shift from a small meta-network.

The meta-net (Linear -> ReLU -> Linear, bottleneck dim/16) maps the image's normalised feature to a
vector added to every context token, so each image gets its own prompt; conditioning on the image
is what keeps accuracy on classes never trained on. The image tower stays frozen (features cached);
the text side runs once per (image, class).
"""

from __future__ import annotations

from pydantic import Field

from ..models.clip import ClipBackbone
from ..prompts.clip import PromptShape
from .base import register
from .family.clip import ClipConfig, ClipMethod


class CoCoOpConfig(ClipConfig):
    batch_size: int = Field(8, ge=1)


@register
class CoCoOp(ClipMethod):
    name = "cocoop"
    description = "CoCoOp: CoOp context + an image-conditioned shift from a meta-network."
    Config = CoCoOpConfig

    def prompt_shape(self, backbone: ClipBackbone) -> PromptShape:
        return PromptShape(n_ctx=self.config.n_tokens, conditional=True)
