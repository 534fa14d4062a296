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

On a generative task (the answer is text) there are no label distributions; the criteria are:
- `metric` (the default there): the task's primary metric on greedy generations on the k-shot dev set;
- `likelihood`: the target's log-likelihood per token on the k-shot train and dev examples (teacher-forced,
  one pass per example: the cheap one);
- `consistency` (label-free): agreement of the candidates' generations on the k-shot inputs, answers
  unread: a candidate's score is the primary metric of its output against each other candidate's output,
  averaged over those candidates and the inputs (prompts that say the same thing as the others are
  likelier to say the right thing, as self-consistency and MBR decoding assume).
Every candidate's target likelihood is recorded whatever the criterion, its dev metric where its answers
were generated. Generating costs one pass per generated token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from ..errors import ConfigError
from ..generative import GenerationSetup
from ..models.scoring import class_scores
from ..prompts.hard import HardPrompt, check_template
from ..search.engine import CandidateScorer
from ..search.generative import LikelihoodScorer, MetricScorer
from ..search.state import SearchState
from .base import Method, MethodConfig, MethodResult, RunContext, register
from .family.search import check_budget

CRITERIA = ("mi", "entropy", "cbm", "flatness", "accuracy")
GENERATIVE_CRITERIA = ("metric", "likelihood", "consistency")


class SelectConfig(MethodConfig):
    candidates: list[str] = Field(
        default_factory=list,
        description="templates (with the task's fields) or instructions to put before the template",
    )
    candidates_file: str | None = Field(None, description="one candidate per line (added to `candidates`)")
    criterion: Literal["mi", "entropy", "cbm", "flatness", "accuracy", "metric", "likelihood", "consistency"] = Field(
        "mi", description="classification: mi, entropy, cbm, flatness, accuracy; a generative task: metric (its "
        "default), likelihood, consistency"
    )
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
    generative = True

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
        """The held-out accuracy (a generative task: primary metric) of every candidate: the oracle is the best
        of them (a benchmark's `close_to_oracle` claim compares the picked one with it)."""
        scores = [score(p) for p in self.candidates(ctx)]
        return {"candidates_accuracy": scores, "oracle_accuracy": max(scores),
                "picked_accuracy": scores[result.info["picked"]]}

    @classmethod
    def result_lines(cls, meta: dict[str, Any]) -> list[str]:
        """The candidates' scores (higher is better), the picked one marked, then the usual lines."""
        info = meta.get("info", {})
        rows = info.get("selection", [])
        generative = any("likelihood" in row for row in rows)
        keys = [k for k in GENERATIVE_CRITERIA if any(k in row for row in rows)] if generative else CRITERIA
        lines = [f"candidates (criterion: {info['criterion']}, higher is better):",
                 f"  {'#':>10}  " + "  ".join(f"{k:>{max(8, len(k))}}" for k in keys) + "  prompt"]
        for i, row in enumerate(rows):
            mark = f"{i} <- picked" if i == info["picked"] else str(i)
            cells = "  ".join(f"{row[k]:{max(8, len(k))}.4f}" if k in row else f"{'-':>{max(8, len(k))}}" for k in keys)
            lines.append(f"  {mark:>10}  {cells}  {row['prompt'][:60]!r}")
        return lines + super().result_lines(meta)

    def criterion(self, ctx: RunContext) -> str:
        """The criterion in force (a generative task's default: metric); one that does not fit the task's
        kind is refused with the ones that do."""
        cfg: SelectConfig = self.config  # type: ignore[assignment]
        if not ctx.task.is_generative:
            if cfg.criterion in GENERATIVE_CRITERIA:
                raise ConfigError(f"select: criterion '{cfg.criterion}' is for generative tasks; classification task "
                                  f"'{ctx.task.name}' takes {', '.join(CRITERIA)}")
            return cfg.criterion
        if "criterion" not in cfg.model_fields_set:
            return "metric"
        if cfg.criterion in CRITERIA:
            raise ConfigError(f"select: criterion '{cfg.criterion}' reads label probabilities, which generative task "
                              f"'{ctx.task.name}' has none of; use {', '.join(GENERATIVE_CRITERIA)}")
        return cfg.criterion

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: SelectConfig = self.config  # type: ignore[assignment]
        criterion = self.criterion(ctx)
        prompts = self.candidates(ctx)
        if ctx.task.is_generative:
            return self._fit_generative(ctx, prompts, criterion)
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
        best = max(range(len(rows)), key=lambda i: (rows[i][criterion], rows[i]["accuracy"]))
        chosen = prompts[best]
        info = {
            "criterion": criterion,
            "selection": rows,
            "picked": best,
            "queries_used": state.used,
            "budget": cfg.budget,
            "uniform_entropy": math.log(ctx.labels.num_classes),
        }
        return MethodResult("hard", {}, 0, state.trace, info, text_prompt=chosen.as_meta())

    def _fit_generative(self, ctx: RunContext, prompts: list[HardPrompt], criterion: str) -> MethodResult:
        """Target likelihood of every candidate on the labelled examples; greedy answers on the dev set
        (`metric`) or on every k-shot input (`consistency`); then the pick."""
        cfg: SelectConfig = self.config  # type: ignore[assignment]
        bb, task = ctx.backbone, ctx.task
        if criterion == "consistency" and len(prompts) < 3:
            raise ConfigError("select: criterion 'consistency' scores candidates by how their answers agree with the "
                              "other candidates' and needs at least 3 candidates (two always agree with each other "
                              f"equally); got {len(prompts)}")
        labelled = ctx.data.train + ctx.data.dev
        asked = {"metric": ctx.data.dev, "consistency": labelled}.get(criterion, [])
        new = task.generation.max_new_tokens
        check_budget(self.name, cfg.budget, len(labelled) + len(asked) * new,
                     f"one candidate's target likelihood on {len(labelled)} examples"
                     + (f" and its answers to {len(asked)} inputs x {new} generated tokens" if asked else ""))
        state = SearchState(ctx.out_dir, cfg.budget, ctx.resume, ctx.run_fingerprint, ctx.callbacks)
        likelihood = LikelihoodScorer(bb, task, labelled, state, "inputs")
        answers = MetricScorer(bb, task, asked, state, "inputs") if asked else None
        n_train = len(ctx.data.train) if criterion == "consistency" else 0  # where the dev answers start
        rows: list[dict[str, Any]] = []
        for prompt in prompts:
            nll = likelihood.score([prompt])
            got = answers.score([prompt]) if answers is not None and nll else None
            if not nll or got == []:
                break
            row = {"prompt": prompt.describe() if prompt.instruction else prompt.template,
                   "likelihood": likelihood.fitness(nll[0])}
            if got:
                row["metric"] = float(got[0][n_train:, 0].mean())
            rows.append(row)
            if criterion != "consistency":
                state.record(row[criterion], candidate=row["prompt"])
            state.round_done()
        if criterion == "consistency":
            outputs = [answers.outputs(p) for p in prompts[: len(rows)]]  # type: ignore[union-attr]
            for row, score in zip(rows, self._agreement(task, outputs), strict=True):
                row["consistency"] = score
                state.record(score, candidate=row["prompt"])
        if criterion == "consistency":  # label-free: ties go to the earlier candidate, not to a labelled figure
            best = max(range(len(rows)), key=lambda i: (rows[i][criterion], -i))
        else:
            best = max(range(len(rows)), key=lambda i: (rows[i][criterion], rows[i]["likelihood"]))
        info = {"criterion": criterion, "metric": task.primary_metric, "selection": rows, "picked": best,
                "queries_used": state.used, "budget": cfg.budget}
        return MethodResult("hard", {}, 0, state.trace, info, text_prompt=prompts[best].as_meta())

    @staticmethod
    def _agreement(task: Any, outputs: list[list[str]]) -> list[float]:
        """Each candidate's mean agreement with the others: the primary metric of its answer to an input
        with another candidate's answer to it as the reference, averaged over inputs and the others
        (one candidate alone, which a spent budget can leave, agrees with itself: 1.0)."""
        setup = GenerationSetup.of_task(task)
        metric = dict(setup.metrics)[setup.primary]
        out = []
        for i, mine in enumerate(outputs):
            others = [o for j, o in enumerate(outputs) if j != i] or [mine]
            values = [metric(a, [b]) for other in others for a, b in zip(mine, other, strict=True)]
            out.append(sum(values) / max(len(values), 1))
        return out

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
