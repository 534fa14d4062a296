"""Prompt selection: pick one of several given prompts, with no labels or few.

Criteria (higher is better), computed from the model's label distributions on the k-shot inputs:
- `mi`: mutual information between input and prediction, H(mean p) - mean H(p) (Sorensen et al., 2022);
- `entropy`: entropy of the predicted-label histogram (GlobalE, Lu et al., 2022): prompts that
  predict every label sometimes, not one label always;
- `cbm`: mutual information after calibration by marginalisation, p(y|x) / mean_x p(y|x) renormalised
  (Yang et al., 2023), which removes a prompt's constant label bias before judging its confidence;
- `flatness`: mutual information minus the mean KL between the predictions and those with Gaussian
  noise on the input embeddings (flatness-aware selection, Shen et al., 2023: a flat prompt is robust);
- `accuracy`: accuracy on the labelled k-shot dev set (the few-labels case).
Every candidate's scores on every criterion are recorded; `criterion` picks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from ..errors import ConfigError
from ..models.scoring import class_scores
from ..prompts.hard import HardPrompt, check_template
from ..search.engine import CandidateScorer
from ..search.state import SearchState
from .base import Method, MethodConfig, MethodResult, RunContext, register
from .family.search import check_budget

CRITERIA = ("mi", "entropy", "cbm", "flatness", "accuracy")


class SelectConfig(MethodConfig):
    candidates: list[str] = Field(
        default_factory=list,
        description="templates (with the task's fields) or instructions to put before the template",
    )
    candidates_file: str | None = Field(None, description="one candidate per line (added to `candidates`)")
    criterion: Literal["mi", "entropy", "cbm", "flatness", "accuracy"] = Field("mi")
    budget: int | None = Field(None, ge=1, description="forward passes; default: whatever the candidates need")
    noise: float = Field(0.05, gt=0, description="flatness: noise std, relative to the embeddings' std")


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp(min=1e-12).log()).sum(-1)


def mutual_information(p: torch.Tensor) -> float:
    return float(_entropy(p.mean(0)) - _entropy(p).mean())


@register
class Select(Method):
    name = "select"
    description = (
        "Prompt selection among given candidates: mutual information, entropy, calibration (CBM), flatness, accuracy."
    )
    Config = SelectConfig
    text_result = True

    def candidates(self, ctx: RunContext) -> list[HardPrompt]:
        cfg: SelectConfig = self.config  # type: ignore[assignment]
        texts = [(c, f"candidates[{i}]") for i, c in enumerate(cfg.candidates)]
        if cfg.candidates_file:
            path = Path(cfg.candidates_file).expanduser()
            if not path.is_file():
                raise ConfigError(f"candidates_file {path} does not exist")
            lines = path.read_text(encoding="utf-8").splitlines()
            texts += [(line.replace("\\n", "\n"), f"{path}:{i + 1}") for i, line in enumerate(lines) if line.strip()]
        if not texts:
            raise ConfigError(
                'select needs candidate prompts: -p candidates=\'["...", "..."]\' or '
                "-p candidates_file=<file, one per line>; the list is empty"
            )
        fields = ctx.task.spec.input_fields
        out = []
        for text, where in texts:
            if "{" in text:
                check_template(text, fields, where)
                out.append(HardPrompt(text))
            else:
                out.append(HardPrompt.build(ctx.task.spec.template, instruction=text))
        return out

    def extra_metrics(self, ctx: RunContext, result: MethodResult, score: Callable[[Any], float]) -> dict[str, Any]:
        """The held-out accuracy of every candidate: the oracle is the best of them (a benchmark's
        `close_to_oracle` claim compares the picked one with it)."""
        scores = [score(p) for p in self.candidates(ctx)]
        return {"candidates_accuracy": scores, "oracle_accuracy": max(scores),
                "picked_accuracy": scores[result.info["picked"]]}

    @classmethod
    def result_lines(cls, meta: dict[str, Any]) -> list[str]:
        """The candidates' scores (higher is better), the picked one marked, then the usual lines."""
        info = meta.get("info", {})
        keys = ("mi", "entropy", "cbm", "flatness", "accuracy")
        lines = [f"candidates (criterion: {info['criterion']}, higher is better):",
                 f"  {'#':>10}  " + "  ".join(f"{k:>8}" for k in keys) + "  prompt"]
        for i, row in enumerate(info.get("selection", [])):
            mark = f"{i} <- picked" if i == info["picked"] else str(i)
            cells = "  ".join(f"{row[k]:8.4f}" if k in row else f"{'-':>8}" for k in keys)
            lines.append(f"  {mark:>10}  {cells}  {row['prompt'][:60]!r}")
        return lines + super().result_lines(meta)

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: SelectConfig = self.config  # type: ignore[assignment]
        prompts = self.candidates(ctx)
        examples = ctx.data.train + ctx.data.dev
        per_round = len(examples) * (2 if cfg.criterion == "flatness" else 1)
        check_budget(self.name, cfg.budget, per_round, f"one candidate on {len(examples)} examples")
        state = SearchState(ctx.out_dir, cfg.budget, ctx.resume, ctx.run_fingerprint, ctx.callbacks)
        scorer = CandidateScorer(ctx.backbone, ctx.task, ctx.labels, examples, state, "inputs")
        dev_golds = scorer.golds[len(ctx.data.train) :]
        rows = []
        for prompt in prompts:
            got = scorer.score([prompt])
            if not got:
                break
            p = torch.softmax(got[0].float(), -1)
            calibrated = p / p.mean(0, keepdim=True)
            calibrated = calibrated / calibrated.sum(1, keepdim=True)
            hist = torch.bincount(p.argmax(1), minlength=p.shape[1]).float() / len(p)
            row = {
                "prompt": prompt.describe() if prompt.instruction else prompt.template,
                "mi": mutual_information(p),
                "entropy": float(_entropy(hist)),
                "cbm": mutual_information(calibrated),
                "accuracy": float((p[len(ctx.data.train) :].argmax(1) == dev_golds).float().mean()),
            }
            if cfg.criterion == "flatness":
                noisy = state.lookup(
                    f"noisy:{prompt.template}", len(examples), lambda pr=prompt: self._noisy_scores(ctx, scorer, pr)
                )
                if noisy is None:
                    break
                q = torch.softmax(noisy.float(), -1)
                kl = float((p * (p.clamp(min=1e-12).log() - q.clamp(min=1e-12).log())).sum(1).mean())
                row["flatness"] = row["mi"] - kl
            rows.append(row)
            state.record(row[cfg.criterion], candidate=row["prompt"])
            state.round_done()
        best = max(range(len(rows)), key=lambda i: (rows[i][cfg.criterion], rows[i]["accuracy"]))
        chosen = prompts[best]
        info = {
            "criterion": cfg.criterion,
            "selection": rows,
            "picked": best,
            "queries_used": state.used,
            "budget": cfg.budget,
            "uniform_entropy": math.log(ctx.labels.num_classes),
        }
        return MethodResult("hard", {}, 0, state.trace, info, text_prompt=chosen.as_meta())

    @torch.no_grad()
    def _noisy_scores(self, ctx: RunContext, scorer: CandidateScorer, prompt: HardPrompt) -> torch.Tensor:
        """Label scores with seeded Gaussian noise on every input embedding (padded path, labels' first tokens)."""
        cfg: SelectConfig = self.config  # type: ignore[assignment]
        bb = ctx.backbone
        ids = bb.tokenize(scorer.render(prompt.template))
        gen = torch.Generator().manual_seed(ctx.seed)
        std = float(bb.model.get_input_embeddings().weight.float().std()) * cfg.noise
        rows = torch.tensor([w[0] for w in ctx.labels.flat], device=bb.device)
        out = []
        for i in range(0, len(ids), 16):
            embeds, mask, positions, answer = bb.padded_inputs(ids[i : i + 16], None, padding_side="left")
            noise = torch.randn(embeds.shape, generator=gen).to(embeds.device, embeds.dtype) * std
            hidden = bb.decoder(
                inputs_embeds=embeds + noise, attention_mask=mask, position_ids=positions
            ).last_hidden_state
            word = bb._logits(hidden[torch.arange(len(answer)), answer], rows)
            out.append(class_scores(word, ctx.labels).float().cpu())
        return torch.cat(out)
