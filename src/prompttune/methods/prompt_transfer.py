"""Prompt transfer: start from a prompt learned on a source task (SPoT, Vu et al., 2022; PANDA's
vanilla PoT, Zhong et al., 2024), optionally distilling the source prompt's predictions on the
target inputs into the new prompt (PANDA), plus the transferability scores that help pick a source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from ..artifact import backbone_matches, prompt_from_tensors, read_artifact
from ..errors import ConfigError
from ..models import CausalLMBackbone
from .base import MethodResult, RunContext, register
from .family.soft import SoftPromptConfig, SoftPromptMethod


class PromptTransferConfig(SoftPromptConfig):
    source: str = Field(..., description="artifact directory of the source prompt (a soft prompt)")
    n_tokens: int | None = Field(None, ge=1, description="prompt length; must equal the source's (default: it)")
    distill: float = Field(0.0, ge=0, description="weight of PANDA's distillation term (0: plain transfer)")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the distillation term")


def load_source_prompt(path: str | Path, backbone: CausalLMBackbone, who: str) -> tuple[dict[str, Any], torch.Tensor]:
    """A source artifact's soft prompt, refusing one learned on other weights or of another kind."""
    meta, tensors = read_artifact(path)
    src = meta["backbone"]
    if not backbone_matches(src, backbone):
        raise ConfigError(
            f"{who}: source {path} was trained on backbone '{src.get('id')}' (weights {src.get('fingerprint')}, "
            f"hidden size {src.get('hidden_size')}), this run uses '{backbone.model_id}' "
            f"(weights {backbone.fingerprint}, hidden size {backbone.hidden_size})"
        )
    if meta["prompt_kind"] != "soft":
        raise ConfigError(f"{who}: source {path} holds a '{meta['prompt_kind']}' prompt ({meta['method']}); "
                          "only soft prompts (prompt-tuning and its reparameterisations) can be transferred")
    return meta, tensors["prompt"].float()


@register
class PromptTransfer(SoftPromptMethod):
    name = "prompt-transfer"
    description = "Prompt transfer (SPoT / PANDA): start from a source task's prompt, optionally distil it."
    Config = PromptTransferConfig

    def initial_prompt(self, backbone, seed: int) -> torch.Tensor:
        cfg: PromptTransferConfig = self.config  # type: ignore[assignment]
        _, prompt = load_source_prompt(cfg.source, backbone, self.name)
        if cfg.n_tokens is not None and cfg.n_tokens != prompt.shape[0]:
            raise ConfigError(f"{self.name}: source {cfg.source} has a {prompt.shape[0]}-token prompt, "
                              f"this run asks for n_tokens {cfg.n_tokens}; drop n_tokens or make them equal")
        return prompt

    def count_trainable(self, model_config) -> int:
        return (self.config.n_tokens or 20) * model_config.hidden_size  # type: ignore[attr-defined]

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: PromptTransferConfig = self.config  # type: ignore[assignment]
        self.backbone = bb = ctx.backbone
        init = self.initial_prompt(bb, ctx.seed)  # validates the source before anything trains
        prompt = self.seeded_build(init, ctx.seed)
        teacher = prompt_from_tensors("soft", {"prompt": init}, bb.device) if cfg.distill > 0 else None
        outcome = self.train_module(ctx, prompt, cfg, teacher=teacher, distill=cfg.distill,
                                    temperature=cfg.temperature)
        prompt.load_state_dict(outcome.best_state)
        return self.result(prompt, outcome, info={"source": str(Path(cfg.source).resolve())})


@torch.no_grad()
def transfer_score(a: torch.Tensor, b: torch.Tensor, backbone: CausalLMBackbone) -> dict[str, float]:
    """How alike two soft prompts are, as SPoT and PANDA measure it.

    prompt_cosine: cosine of the mean prompt vectors (SPoT's average-embedding score);
    token_cosine: mean over a's tokens of the best cosine with any of b's (SPoT's per-token score, symmetrised);
    activation_cosine: mean over layers of the cosine of the model's mean hidden states when it
    reads each prompt alone (an activation-based score in the spirit of PANDA / Su et al.).
    """
    a, b = a.float().cpu(), b.float().cpu()
    prompt_cos = F.cosine_similarity(a.mean(0), b.mean(0), dim=0)
    sims = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    token_cos = (sims.max(1).values.mean() + sims.max(0).values.mean()) / 2

    def layer_means(p: torch.Tensor) -> torch.Tensor:
        out = backbone.decoder(inputs_embeds=p.to(backbone.device, backbone.dtype)[None], output_hidden_states=True)
        return torch.stack([h[0].float().mean(0) for h in out.hidden_states[1:]]).cpu()

    act_cos = F.cosine_similarity(layer_means(a), layer_means(b), dim=-1).mean()
    return {"prompt_cosine": float(prompt_cos), "token_cosine": float(token_cos), "activation_cosine": float(act_cos)}
