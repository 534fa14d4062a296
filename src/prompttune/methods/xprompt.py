"""XPrompt (Ma et al., 2022, "XPrompt: Exploring the Extreme of Prompt Tuning").

1. Prompt tuning as usual.
2. Hierarchical structured pruning, lottery-ticket style: score every prompt token by the
   first-order importance |dL/dγ| of a gate γ on it (Michel et al., 2019), summed over the training
   set, and drop the least important tokens; then do the same for the pieces (equal slices of each
   remaining vector).
3. Rewind the surviving entries to their values after step 1 and retrain them under the masks.
Steps 2-3 repeat for `rounds`. The artifact holds only the surviving tokens (pruned pieces are zero),
so the prompt is shorter at inference too; the unpruned prompt is kept beside it as "unpruned".
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..objectives import objective_for
from ..prompts.reparam import MaskedPrompt
from .base import MethodResult, RunContext, register
from .family.soft import SoftPromptConfig, SoftPromptMethod


class XPromptConfig(SoftPromptConfig):
    token_prune: float = Field(0.3, ge=0, lt=1, description="share of the active tokens pruned per round")
    piece_prune: float = Field(0.2, ge=0, lt=1, description="share of the active pieces pruned per round")
    n_pieces: int = Field(16, ge=1, description="pieces per prompt vector (must divide the hidden size)")
    rounds: int = Field(1, ge=1, description="prune-rewind-retrain rounds")
    retrain_steps: int | None = Field(None, ge=1, description="steps per retraining round (default: steps)")


@register
class XPrompt(SoftPromptMethod):
    name = "xprompt"
    description = "XPrompt: prompt tuning, then token- and piece-level pruning with rewinding and retraining."
    Config = XPromptConfig

    def build_prompt(self, init: torch.Tensor) -> torch.nn.Module:
        return MaskedPrompt(init, self.config.n_pieces)  # type: ignore[attr-defined]

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: XPromptConfig = self.config  # type: ignore[assignment]
        self.backbone = ctx.backbone
        prompt: MaskedPrompt = self.seeded_build(self.initial_prompt(ctx.backbone, ctx.seed), ctx.seed)
        outcome = self.train_module(ctx, prompt, cfg, checkpoint="checkpoint.tune.safetensors")
        prompt.load_state_dict(outcome.best_state)
        tuned = prompt.weight.detach().clone()
        history = [{"phase": "tune", **h} for h in outcome.history]
        unpruned_dev = outcome.best.accuracy
        retrain = cfg.model_copy(update={"steps": cfg.retrain_steps or cfg.steps})
        for r in range(1, cfg.rounds + 1):
            self._prune(ctx, prompt, "token", cfg.token_prune)
            self._prune(ctx, prompt, "piece", cfg.piece_prune)
            with torch.no_grad():
                prompt.weight.copy_(tuned)  # rewind the survivors to their tuned values
            outcome = self.train_module(ctx, prompt, retrain, checkpoint=f"checkpoint.retrain-{r}.safetensors")
            prompt.load_state_dict(outcome.best_state)
            history += [{"phase": f"retrain-{r}", **h} for h in outcome.history]
        result = self.result(prompt, outcome)
        keep = prompt.token_mask.bool().cpu()
        active = int(keep.sum())
        result.tensors["prompt"] = result.tensors["prompt"][keep]
        result.tensors["unpruned"] = tuned.float().cpu()
        result.trainable_parameters = int((prompt.mask() != 0).sum())
        result.history = history
        result.info.update({
            "n_tokens": cfg.n_tokens, "active_tokens": active, "kept_token_indices": keep.nonzero()[:, 0].tolist(),
            "active_pieces": int(prompt.piece_mask[keep].sum()), "pieces": active * cfg.n_pieces,
            "unpruned_best_dev_accuracy": unpruned_dev,
        })
        return result

    def count_trainable(self, model_config) -> int:
        """Entries left after the first round (later rounds prune further, depending on the data)."""
        cfg: XPromptConfig = self.config  # type: ignore[assignment]
        tokens = cfg.n_tokens - min(int(cfg.token_prune * cfg.n_tokens), cfg.n_tokens - 1)
        pieces = tokens * cfg.n_pieces
        pieces -= min(int(cfg.piece_prune * pieces), pieces - 1)
        return pieces * (model_config.hidden_size // cfg.n_pieces)

    def _prune(self, ctx: RunContext, prompt: MaskedPrompt, level: str, share: float) -> None:
        """Zero the mask of the least important `share` of the active tokens or pieces."""
        mask = prompt.token_mask if level == "token" else prompt.piece_mask * prompt.token_mask[:, None]
        active = mask.nonzero(as_tuple=True)
        n_prune = min(int(share * len(active[0])), len(active[0]) - 1)
        if n_prune <= 0:
            return
        scores = self._importance(ctx, prompt, level)[active]
        worst = scores.argsort()[:n_prune]
        target = prompt.token_mask if level == "token" else prompt.piece_mask
        target[tuple(a[worst] for a in active)] = 0.0

    def _importance(self, ctx: RunContext, prompt: MaskedPrompt, level: str) -> torch.Tensor:
        """|dL/dγ| of an all-ones gate γ on each token (or piece), summed over training batches."""
        bb, cfg = ctx.backbone, self.config
        objective = ctx.objective or objective_for(bb, ctx.task)
        train = objective.encode(ctx.data.train)
        shape = prompt.token_mask.shape if level == "token" else prompt.piece_mask.shape
        total = torch.zeros(shape)
        piece = prompt.weight.shape[1] // prompt.piece_mask.shape[1]
        for i in range(0, len(train), cfg.batch_size):
            gate = torch.ones(shape, requires_grad=True, device=prompt.weight.device)
            expanded = gate[:, None] if level == "token" else gate.repeat_interleave(piece, dim=1)
            vectors = prompt.weight.detach() * prompt.mask() * expanded
            objective.gate_loss(train, range(i, min(i + cfg.batch_size, len(train))), vectors).backward()
            total += gate.grad.abs().cpu()
        return total
