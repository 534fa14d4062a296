"""Scoring examples with a backbone and a prompt: the loss used in training and the metrics."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from .models import CausalLMBackbone, LabelWords
from .tasks import Example, Task, accuracy, macro_f1


@dataclass
class EncodedExamples:
    """Examples turned into token ids and gold class indices once, reused every step."""

    token_ids: list[list[int]]
    golds: torch.Tensor

    def __len__(self) -> int:
        return len(self.token_ids)

    def subset(self, indices: Sequence[int]) -> tuple[list[list[int]], torch.Tensor]:
        return [self.token_ids[i] for i in indices], self.golds[list(indices)]


def encode(backbone: CausalLMBackbone, task: Task, examples: Sequence[Example]) -> EncodedExamples:
    ids = backbone.tokenize([task.render(ex) for ex in examples])
    return EncodedExamples(ids, torch.tensor([task.label_index(ex) for ex in examples], dtype=torch.long))


@dataclass
class EvalResult:
    accuracy: float
    macro_f1: float
    loss: float
    n: int
    seconds: float
    predictions: list[int] = field(default_factory=list, repr=False)
    split: str | None = None  # set by `evaluate_artifact`: the split scored ...
    excluded: int = 0  # ... and how many of its examples were left out as used in training or selection
    majority: float = 0.0  # the share of the most frequent gold label: what always answering it would score

    primary: ClassVar[str] = "accuracy"  # the headline metric (see kinds.base.Scores)

    @property
    def examples_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        return f"accuracy={self.accuracy:.4f} macro_f1={self.macro_f1:.4f} examples_per_s={self.examples_per_s:.2f}"

    def summary(self) -> str:
        return (f"{self.n} examples: accuracy {self.accuracy:.4f}, macro-F1 {self.macro_f1:.4f}, "
                f"{self.examples_per_s:.1f} examples/s")

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "loss": self.loss, "n": self.n,
                "majority": self.majority, "examples_per_s": self.examples_per_s}


def classification_loss(
    backbone: CausalLMBackbone, labels: LabelWords, token_ids, golds: torch.Tensor, prompt: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy over the label words' scores (the LM-BFF objective)."""
    scores = backbone.score(token_ids, labels, prompt)
    return F.cross_entropy(scores, golds.to(scores.device))


@torch.inference_mode()
def evaluate_encoded(
    backbone: CausalLMBackbone, labels: LabelWords, data: EncodedExamples, prompt: torch.Tensor | None,
    batch_size: int = 32,
) -> EvalResult:
    start = time.perf_counter()
    scores = [backbone.score(data.token_ids[i : i + batch_size], labels, prompt, max_row_tokens=512).float().cpu()
              for i in range(0, len(data), batch_size)]
    return result_from_scores(scores, data.golds, labels.num_classes, time.perf_counter() - start)


def result_from_scores(scores: list[torch.Tensor], golds: torch.Tensor, num_classes: int, seconds: float) -> EvalResult:
    preds: list[int] = []
    total_loss = 0.0
    start = 0
    for chunk in scores:
        total_loss += float(F.cross_entropy(chunk, golds[start : start + len(chunk)], reduction="sum"))
        preds.extend(chunk.argmax(1).tolist())
        start += len(chunk)
    gold_list = golds.tolist()
    return EvalResult(
        accuracy=accuracy(preds, gold_list), macro_f1=macro_f1(preds, gold_list, num_classes),
        loss=total_loss / max(len(gold_list), 1), n=len(gold_list), seconds=seconds, predictions=preds,
        majority=max(Counter(gold_list).values(), default=0) / max(len(gold_list), 1),
    )


@torch.inference_mode()
def evaluate_prompt(
    backbone: CausalLMBackbone, task: Task, labels: LabelWords, examples: Sequence[Example], prompt,
    batch_size: int = 32,
) -> EvalResult:
    """Any prompt on `examples`: text prompts render the inputs with their own template (and words)."""
    from .prompts.hard import BoostedPrompts, HardPrompt
    from .prompts.knn import renders_own_inputs

    golds = torch.tensor([task.label_index(ex) for ex in examples], dtype=torch.long)
    if renders_own_inputs(prompt):  # each input its own text (kNN demonstrations), the task's label words
        ids = backbone.tokenize(prompt.bind(backbone).render_many([ex.fields for ex in examples]))
        return evaluate_encoded(backbone, labels, EncodedExamples(ids, golds), None, batch_size)
    if isinstance(prompt, HardPrompt):
        if prompt.words:
            labels = backbone.label_words([[w] for w in prompt.words], task.labels)
        ids = backbone.tokenize([prompt.template.format_map(ex.fields) for ex in examples])
        return evaluate_encoded(backbone, labels, EncodedExamples(ids, golds), None, batch_size)
    if isinstance(prompt, BoostedPrompts):
        start = time.perf_counter()
        scores = prompt.scores(backbone, lambda t, ex: t.format_map(ex.fields), examples, labels.num_classes)
        return result_from_scores([scores], golds, labels.num_classes, time.perf_counter() - start)
    return evaluate_encoded(backbone, labels, encode(backbone, task, examples), prompt, batch_size)
