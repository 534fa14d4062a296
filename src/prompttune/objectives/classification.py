"""Classification: cross-entropy over the verbalizer words' scores at the answer position (LM-BFF)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..evaluation import EncodedExamples, encode, evaluate_encoded
from ..training import Evaluation
from .base import Objective, register_objective


@register_objective("label")
class ClassificationObjective(Objective):
    def __init__(self, backbone: Any, task: Any, labels: Any = None):
        super().__init__(backbone, task)
        self.labels = labels if labels is not None else backbone.label_words(task.words(), task.labels)

    def encode(self, examples: Sequence[Any]) -> EncodedExamples:
        return encode(self.backbone, self.task, examples)

    def scores(self, data: EncodedExamples, indices: Sequence[int], prompt: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ids, golds = data.subset(indices)
        return self.backbone.score(ids, self.labels, prompt), golds

    def loss(self, data: EncodedExamples, indices: Sequence[int], prompt: Any, reduction: str = "mean",
             teacher: Any = None, distill: float = 0.0, temperature: float = 1.0) -> torch.Tensor:
        scores, golds = self.scores(data, indices, prompt)
        loss = F.cross_entropy(scores, golds.to(scores.device), reduction=reduction)
        if teacher is not None and distill > 0:
            with torch.no_grad():
                target = F.softmax(self.backbone.score(data.subset(indices)[0], self.labels, teacher) / temperature, -1)
            student = F.log_softmax(scores / temperature, -1)
            kl = F.kl_div(student, target, reduction="batchmean" if reduction == "mean" else "sum")
            loss = loss + distill * temperature**2 * kl
        return loss

    def evaluate(self, data: EncodedExamples, prompt: Any) -> Evaluation:
        result = evaluate_encoded(self.backbone, self.labels, data, prompt)
        return Evaluation(result.accuracy, result.loss)
