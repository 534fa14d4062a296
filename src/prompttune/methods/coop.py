"""CoOp and the two methods that regularise it towards the hand-written prompt.

- `coop` (Zhou et al., 2022): learnable context vectors before the class name, unified (shared by
  all classes) or class-specific (`class_specific=true`), trained with cross-entropy.
- `kgcoop` (Yao et al., 2023): CoOp plus lambda x the mean squared distance between each class's
  learned text feature and its hand-written-prompt feature (both normalised), which keeps the
  prompt near CLIP's general knowledge and so keeps new-class accuracy.
- `prograd` (Zhu et al., 2023): each step's cross-entropy gradient, when it conflicts with the
  gradient of KL(zero-shot || prompted) (negative dot product), is projected onto the normal plane
  of the latter, so learning never moves against the zero-shot direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..models.clip import ClipBackbone
from ..prompts.clip import ClipPrompt, PromptShape
from .base import register
from .family.clip import Batch, ClipConfig, ClipMethod


class CoOpConfig(ClipConfig):
    class_specific: bool = Field(False, description="one context per class (CSC) instead of a unified one")


@register
class CoOp(ClipMethod):
    name = "coop"
    description = "CoOp: learned context vectors before the class name (unified or class-specific)."
    Config = CoOpConfig

    def prompt_shape(self, backbone: ClipBackbone) -> PromptShape:
        return PromptShape(n_ctx=self.config.n_tokens, class_specific=self.config.class_specific)


class KgCoOpConfig(ClipConfig):
    weight: float = Field(8.0, ge=0, description="lambda: weight of the distance to the hand-written prompt")


@register
class KgCoOp(ClipMethod):
    name = "kgcoop"
    description = "KgCoOp: CoOp + distance of learned class features to the hand-written prompt's."
    Config = KgCoOpConfig

    def loss(self, batch: Batch, prompt: ClipPrompt) -> torch.Tensor:
        ce = F.cross_entropy(batch.logits, batch.labels)
        txt = F.normalize(batch.text_features.float(), dim=-1)
        knowledge = ((txt - batch.zs_text) ** 2).sum(-1).mean()
        return ce + self.config.weight * knowledge


class ProGradConfig(ClipConfig):
    projection: float = Field(1.0, ge=0, le=1, description="lambda: how much of the conflicting component is removed")
    temperature: float = Field(1.0, gt=0, description="of the KL between zero-shot and prompted predictions")


@register
class ProGrad(ClipMethod):
    name = "prograd"
    description = "ProGrad: CoOp whose gradient is projected away from conflicts with the zero-shot direction."
    Config = ProGradConfig

    def loss(self, batch: Batch, prompt: ClipPrompt) -> torch.Tensor:
        t = self.config.temperature
        ce = F.cross_entropy(batch.logits, batch.labels)
        kl = F.kl_div(F.log_softmax(batch.logits / t, -1), F.log_softmax(batch.zs_logits / t, -1),
                      reduction="batchmean", log_target=True) * t * t
        params = [p for p in prompt.parameters() if p.requires_grad]
        g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
        g_kl = torch.autograd.grad(kl, params, allow_unused=True)
        g_ce = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_ce, strict=True)]
        g_kl = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_kl, strict=True)]
        dot = sum((a * b).sum() for a, b in zip(g_ce, g_kl, strict=True))
        norm = sum((b * b).sum() for b in g_kl)
        if dot < 0 and norm > 0:
            coef = self.config.projection * dot / norm
            g_ce = [a - coef * b for a, b in zip(g_ce, g_kl, strict=True)]
        # a surrogate whose gradient is the projected one and whose value is the cross-entropy
        surrogate = sum((p * g.detach()).sum() for p, g in zip(params, g_ce, strict=True))
        return surrogate - surrogate.detach() + ce.detach()
