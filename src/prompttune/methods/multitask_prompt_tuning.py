"""Multitask prompt tuning (MPT, Wang et al., 2023, "Multitask Prompt Tuning Enables
Parameter-Efficient Transfer Learning").

1. Distillation: the source prompts (artifacts learned on other tasks, the teachers) are distilled
   into one shared prompt P* with a rank-one multiplicative update per task, P_k = P* ∘ (u_k v_kᵀ),
   trained on the source tasks' own few-shot data with cross-entropy plus a KL term towards each
   teacher's predictions (the paper's logit distillation; its hidden-state term is left out).
2. Target adaptation: P* with a fresh rank-one update (starting at ones) is trained on the target.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field, field_validator

from ..errors import ConfigError
from ..objectives import objective_for
from ..prompts.reparam import MultitaskPrompt
from ..tasks import load_task
from ..training import Evaluation, train_prompt
from .base import MethodResult, RunContext, register
from .family.soft import SoftPromptConfig, SoftPromptMethod
from .prompt_transfer import load_source_prompt


class MultitaskConfig(SoftPromptConfig):
    sources: list[str] = Field(..., description="artifact directories of the source-task prompts (teachers)")
    distill_steps: int = Field(32, ge=1, description="steps of the multitask distillation phase")
    distill_weight: float = Field(1.0, ge=0, description="weight of the KL term towards each teacher")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the KL term")

    @field_validator("sources")
    @classmethod
    def _some_sources(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one source artifact")
        return value


@register
class MultitaskPromptTuning(SoftPromptMethod):
    name = "multitask-prompt-tuning"
    description = "MPT: a shared prompt distilled from source-task prompts (× rank-one task updates), then adapted."
    Config = MultitaskConfig

    def build_prompt(self, init: torch.Tensor) -> torch.nn.Module:
        return MultitaskPrompt(init, 1)

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: MultitaskConfig = self.config  # type: ignore[assignment]
        self.backbone = bb = ctx.backbone
        sources = self._load_sources(ctx)
        shared = torch.stack([s["prompt"] for s in sources]).mean(0)
        multi = MultitaskPrompt(shared, len(sources)).to(bb.device)
        distilled = self._distil(ctx, multi, sources)
        history = [{"phase": "distill", **h} for h in distilled.history]
        multi.load_state_dict(distilled.best_state)
        prompt = self.seeded_build(multi.weight.detach(), ctx.seed)
        outcome = self.train_module(ctx, prompt, cfg, checkpoint="checkpoint.target.safetensors")
        prompt.load_state_dict(outcome.best_state)
        result = self.result(prompt, outcome, info={
            "sources": [s["path"] for s in sources], "distill_best_step": distilled.best_step,
            "distill_best_source_dev_accuracy": distilled.best.accuracy,
        })
        result.history = history + [{"phase": "target", **h} for h in outcome.history]
        return result

    def _load_sources(self, ctx: RunContext) -> list[dict]:
        out = []
        for path in self.config.sources:  # type: ignore[attr-defined]
            meta, prompt = load_source_prompt(path, ctx.backbone, self.name)
            if out and prompt.shape != out[0]["prompt"].shape:
                raise ConfigError(f"{self.name}: source {path} has a {prompt.shape[0]}-token prompt, source "
                                  f"{out[0]['path']} a {out[0]['prompt'].shape[0]}-token one; they must match")
            task = load_task(meta["task"].get("source") or meta["task"]["name"], ctx.data_dir)
            data = meta.get("data", {})
            fewshot = task.few_shot(data.get("shots", 16), data.get("seed", 0), data.get("dev_shots"))
            objective = objective_for(ctx.backbone, task)  # a source task may be of another kind than the target
            out.append({"path": str(Path(path).resolve()), "prompt": prompt.to(ctx.backbone.device), "task": task,
                        "objective": objective, "train": objective.encode(fewshot.train),
                        "dev": objective.encode(fewshot.dev)})
        return out

    def _distil(self, ctx: RunContext, multi: MultitaskPrompt, sources: list[dict]):
        cfg: MultitaskConfig = self.config  # type: ignore[assignment]
        index = [(k, i) for k, s in enumerate(sources) for i in range(len(s["train"]))]  # all source examples

        def loss_fn(batch):
            total = 0.0
            for k, s in enumerate(sources):
                mine = [i for j, i in (index[b] for b in batch) if j == k]
                if not mine:
                    continue
                loss = s["objective"].loss(s["train"], mine, multi(k), reduction="sum", teacher=s["prompt"],
                                           distill=cfg.distill_weight, temperature=cfg.temperature)
                total = total + loss
            return total / len(batch)

        def eval_fn() -> Evaluation:
            results = []
            for k, s in enumerate(sources):
                with torch.no_grad():
                    vectors = multi(k)
                results.append(s["objective"].evaluate(s["dev"], vectors))
            n = len(results)
            return Evaluation(sum(r.accuracy for r in results) / n, sum(r.loss for r in results) / n)

        distill = cfg.model_copy(update={"steps": cfg.distill_steps})
        return train_prompt(multi, loss_fn, eval_fn, len(index), distill, ctx.seed, ctx.out_dir, resume=ctx.resume,
                            progress=ctx.progress, callbacks=ctx.callbacks, fingerprint=ctx.run_fingerprint,
                            checkpoint="checkpoint.distill.safetensors")
