"""Generation: the teacher-forced negative log-likelihood of the target text (and its stop token) after
the rendered template, on the backbone's packed fast path; dev selection by the task's metric on
greedy generations (target NLL breaks ties), or by the NLL alone (`dev_metric: nll`, fast)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..generative import GenerationSetup, generate_answers, score_outputs, target_ids
from ..training import Evaluation
from .base import Objective, register_objective


@dataclass
class EncodedTargets:
    """Generative examples tokenized once: inputs, target tokens, and what dev generation needs."""

    token_ids: list[list[int]]
    target_ids: list[list[int]]
    items: list[dict[str, Any]]
    answers: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.token_ids)

    def subset(self, indices: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
        return [self.token_ids[i] for i in indices], [self.target_ids[i] for i in indices]


@register_objective("text")
class GenerationObjective(Objective):
    def __init__(self, backbone: Any, task: Any):
        super().__init__(backbone, task)
        self.setup = GenerationSetup.of_task(task)
        self.dev_metric = task.spec.dev_metric or self.setup.primary  # "nll", or a metric's report name

    def encode(self, examples: Sequence[Any]) -> EncodedTargets:
        items = [dict(ex.fields) for ex in examples]
        ids = self.backbone.tokenize([self.task.render(ex) for ex in examples])
        texts = [self.task.target_text(ex) for ex in examples]
        inside = sum(any(stop in text for stop in self.setup.stop) for text in texts)
        if inside:  # the model would learn to write the stop string mid-answer, and generation cuts there
            warnings.warn(f"task '{self.task.name}': {inside} of {len(texts)} targets contain a stop string "
                          f"{self.setup.stop}; their answers are cut there when generated", UserWarning, stacklevel=3)
        targets = [target_ids(self.backbone, text, self.setup.stop) for text in texts]
        return EncodedTargets(ids, targets, items, [tuple(ex.answers) for ex in examples])

    def loss(self, data: EncodedTargets, indices: Sequence[int], prompt: Any, reduction: str = "mean",
             teacher: Any = None, distill: float = 0.0, temperature: float = 1.0) -> torch.Tensor:
        """NLL per target token over the batch (as a plain HF forward with `labels` computes it); "sum" is
        that times the batch size."""
        ids, targets = data.subset(indices)
        tokens = sum(map(len, targets))
        scale = 1.0 / tokens if reduction == "mean" else len(ids) / tokens
        if teacher is None or distill <= 0:
            return self.backbone.target_nll(ids, targets, prompt).sum() * scale
        logprobs = self.backbone.target_logprobs(ids, targets, prompt)  # (T, V)
        gold = torch.tensor([t for tgt in targets for t in tgt], device=logprobs.device)
        nll = -logprobs.gather(1, gold[:, None]).sum()
        with torch.no_grad():
            teacher_lp = F.log_softmax(self.backbone.target_logprobs(ids, targets, teacher) / temperature, -1)
        student_lp = F.log_softmax(logprobs / temperature, -1)
        kl = F.kl_div(student_lp, teacher_lp, log_target=True, reduction="sum")
        return (nll + distill * temperature**2 * kl) * scale

    @torch.no_grad()
    def nll(self, data: EncodedTargets, prompt: Any, batch_size: int = 32) -> float:
        total, tokens = 0.0, 0
        for i in range(0, len(data), batch_size):
            ids, targets = data.subset(range(i, min(i + batch_size, len(data))))
            total += float(self.backbone.target_nll(ids, targets, prompt).sum())
            tokens += sum(map(len, targets))
        return total / max(tokens, 1)

    @torch.no_grad()
    def evaluate(self, data: EncodedTargets, prompt: Any) -> Evaluation:
        """The dev metric on greedy generations (the NLL per token as the tie-break); with `dev_metric: nll`,
        the per-token likelihood exp(-NLL) alone, without generating."""
        nll = self.nll(data, prompt)
        if self.dev_metric == "nll":
            return Evaluation(math.exp(-nll), nll)
        outputs = generate_answers(self.backbone, self.setup, data.items, prompt)
        return Evaluation(score_outputs(self.setup, outputs, data.answers)[self.dev_metric], nll)
