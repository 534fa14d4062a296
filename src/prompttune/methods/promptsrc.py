"""PromptSRC (Khattak et al., 2023): prompts that regularise themselves.

Independent deep prompts in both towers, trained with cross-entropy plus three self-consistency
terms against the frozen model: L1 between the prompted and the frozen text features (the frozen
ones averaged over all of the task's templates: textual diversity), L1 between prompted and frozen
image features, and KL between prompted and zero-shot predictions. The saved prompt is a
Gaussian-weighted average of the prompts along training (GPA: weights peak late in training), not
a single snapshot.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from ..models.clip import ClipBackbone
from ..prompts.clip import ClipPrompt, PromptShape
from ..tasks.images import ImageTask
from .base import register
from .family.clip import Batch, ClipConfig, ClipMethod


class PromptSRCConfig(ClipConfig):
    depth: int = Field(9, ge=1, description="prompted layers per tower (capped at the towers' depth)")
    n_vision: int = Field(4, ge=1)
    text_weight: float = Field(25.0, ge=0)
    image_weight: float = Field(10.0, ge=0)
    gpa_mean: float = Field(0.75, ge=0, le=1, description="GPA: peak of the Gaussian, as a share of the steps")
    gpa_std: float = Field(0.05, gt=0, description="GPA: its width, as a share of the steps")
    lr: float = Field(0.0025, gt=0)


class _Averaged(torch.nn.Module):
    """The prompt plus its running Gaussian-weighted sum, kept as buffers so a resumed run continues it."""

    def __init__(self, prompt: ClipPrompt):
        super().__init__()
        self.prompt = prompt
        for name, p in prompt.named_parameters():
            self.register_buffer("gpa_" + name.replace(".", "__"), torch.zeros_like(p.detach()))
        self.register_buffer("gpa_total", torch.zeros(()))
        self.register_buffer("gpa_calls", torch.zeros((), dtype=torch.long))

    def add(self, weight: float) -> None:
        with torch.no_grad():
            for name, p in self.prompt.named_parameters():
                getattr(self, "gpa_" + name.replace(".", "__")).add_(p.detach() * weight)
            self.gpa_total.add_(weight)

    def average(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().clone() for k, v in self.prompt.state_dict().items()}
        if float(self.gpa_total) > 0:
            for name, _ in self.prompt.named_parameters():
                state[name] = getattr(self, "gpa_" + name.replace(".", "__")) / self.gpa_total
        return state


@register
class PromptSRC(ClipMethod):
    name = "promptsrc"
    description = "PromptSRC: V-L deep prompts + self-consistency to the frozen model + Gaussian prompt averaging."
    Config = PromptSRCConfig

    def prompt_shape(self, backbone: ClipBackbone) -> PromptShape:
        depth = min(self.config.depth, backbone.text_depth, backbone.vision_depth)
        return PromptShape(n_ctx=self.config.n_tokens, text_depth=depth - 1, vision_depth=depth,
                           n_vision=self.config.n_vision)

    def zero_shot_templates(self, task: ImageTask) -> list[str]:
        return list(task.templates)

    def _weight(self, step: int) -> float:
        steps = self.config.steps
        mu, sigma = self.config.gpa_mean * steps, self.config.gpa_std * steps
        return math.exp(-((step - mu) ** 2) / (2 * sigma ** 2))

    def wrap(self, prompt: ClipPrompt) -> torch.nn.Module:
        self._averaged = _Averaged(prompt)
        return self._averaged

    def loss(self, batch: Batch, prompt: ClipPrompt) -> torch.Tensor:
        avg = self._averaged
        done = int(avg.gpa_calls)  # the parameters now are those after step `done`
        if done >= 1:
            avg.add(self._weight(done))
        avg.gpa_calls.add_(1)
        ce = F.cross_entropy(batch.logits, batch.labels)
        txt = F.normalize(batch.text_features.float(), dim=-1)
        text_l1 = F.l1_loss(txt, batch.zs_text)
        image_l1 = F.l1_loss(F.normalize(batch.image_features.float(), dim=-1),
                             F.normalize(batch.zs_image.float(), dim=-1))
        kl = F.kl_div(F.log_softmax(batch.logits, -1), F.log_softmax(batch.zs_logits, -1), reduction="batchmean",
                      log_target=True)
        return ce + self.config.text_weight * text_l1 + self.config.image_weight * image_l1 + kl

    def finish(self, prompt: ClipPrompt, module: torch.nn.Module, outcome) -> dict[str, torch.Tensor]:
        module.add(self._weight(self.config.steps))  # the final parameters
        return module.average()
