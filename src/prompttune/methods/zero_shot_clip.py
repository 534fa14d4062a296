"""Zero-shot CLIP: a hand-written template, or a weighted ensemble of the task's templates.

`ensemble="zpe"` weights the templates without labels, as in "A Simple Zero-shot Prompt Weighting
Technique to Improve Prompt Ensembling in Text-Image Models" (Allingham et al., 2023): a template's
score is the mean over unlabelled images of its largest class logit after subtracting that class's
mean logit under the same template (which removes the bias of a template towards some classes and
of the images towards some templates); the weights are a softmax of the scores.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..models.clip import cosine_logits
from ..models.feature_cache import cached_image_features
from .base import MethodConfig, MethodResult, RunContext, register
from .family.clip import ClipMethod


class ZeroShotClipConfig(MethodConfig):
    ensemble: Literal["none", "mean", "zpe"] = Field("none", description="one template, the equal-weight mean "
                                                                          "of the task's templates, or ZPE weights")
    temperature: float = Field(0.1, gt=0, description="ZPE: softmax temperature over template scores")


def zpe_weights(logits_per_template: torch.Tensor, temperature: float) -> torch.Tensor:
    """(templates, images, classes) logits -> (templates,) weights summing to 1."""
    centred = logits_per_template - logits_per_template.mean(dim=1, keepdim=True)  # minus each class's mean logit
    scores = centred.max(dim=-1).values.mean(dim=1)
    return torch.softmax(scores / temperature, dim=0)


@register
class ZeroShotClip(ClipMethod):
    name = "zero-shot-clip"
    description = "CLIP zero-shot: a hand-written template, or a (ZPE-weighted) ensemble of the task's templates."
    Config = ZeroShotClipConfig

    def fit(self, ctx: RunContext) -> MethodResult:
        bb, task = ctx.backbone, ctx.task
        templates = task.templates[:1] if self.config.ensemble == "none" else list(task.templates)
        weights = [1.0 / len(templates)] * len(templates)
        info: dict = {}
        if self.config.ensemble == "zpe" and len(templates) > 1:
            feats = cached_image_features(bb, task.train, ctx.data.train + ctx.data.dev).to(bb.device)  # labels unused
            per_template = torch.stack([
                cosine_logits(feats, F.normalize(bb.encode_texts(task.prompts_for(ctx.data.classes, t)), dim=-1),
                              bb.logit_scale) for t in templates])
            weights = zpe_weights(per_template, self.config.temperature).tolist()
            info["template_scores"] = dict(zip(templates, weights, strict=True))
        return MethodResult("clip", {}, 0, info={"zero_shot": {"templates": templates, "weights": weights}, **info})
