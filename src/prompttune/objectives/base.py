"""The objective protocol and its registry (by what the task's answer is: a label or a text)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from ..training import Evaluation


class Objective(ABC):
    """What a soft method trains a prompt on, for one backbone and one task.

    `prompt` below is what the backbone takes (soft embeddings, a deep prefix, a `DeltaPrompt`, or a
    module with `for_inputs`)."""

    answer: ClassVar[str]  # the kind of answer this objective trains: "label" or "text"

    def __init__(self, backbone: Any, task: Any):
        self.backbone = backbone
        self.task = task

    @abstractmethod
    def encode(self, examples: Sequence[Any]) -> Any:
        """The examples in the form `loss` and `evaluate` take (tokenized once, reused every step); it has
        `len()`."""

    @abstractmethod
    def loss(self, data: Any, indices: Sequence[int], prompt: Any, reduction: str = "mean",
             teacher: Any = None, distill: float = 0.0, temperature: float = 1.0) -> torch.Tensor:
        """The training loss of examples `indices` of `data` ("mean" over the batch, or "sum": the mean
        times the batch size), plus `distill` x T² x KL(teacher || student) when a `teacher` prompt is
        given (PANDA / MPT's distillation, at temperature T)."""

    @abstractmethod
    def evaluate(self, data: Any, prompt: Any) -> Evaluation:
        """The dev figure that selects the best step (higher `accuracy` wins, lower `loss` breaks ties)."""

    def gate_loss(self, data: Any, indices: Sequence[int], prompt: Any) -> torch.Tensor:
        """The summed loss whose gradient ranks prompt pieces (XPrompt's importance)."""
        return self.loss(data, indices, prompt, reduction="sum")


_OBJECTIVES: dict[str, Callable[[Any, Any], Objective]] = {}


def register_objective(answer: str) -> Callable[[type[Objective]], type[Objective]]:
    def add(cls: type[Objective]) -> type[Objective]:
        if answer in _OBJECTIVES:
            raise RuntimeError(f"objective for '{answer}' answers registered twice")
        cls.answer = answer
        _OBJECTIVES[answer] = cls
        return cls

    return add


def answer_of(task: Any) -> str:
    """What `task`'s answer is: "text" for generative tasks, else "label"."""
    return "text" if getattr(task, "is_generative", False) else "label"


def objective_for(backbone: Any, task: Any) -> Objective:
    """The objective that trains prompts for `task` on `backbone`."""
    return _OBJECTIVES[answer_of(task)](backbone, task)
