"""Objectives: how a prompt is trained and selected on one kind of task answer.

A soft-prompt method asks its `RunContext.objective` what an example becomes (`encode`), the loss
of a batch (optionally with a distillation term towards a teacher prompt) and the dev figure that
picks the best step; it never asks whether the task is classification or generation. A new kind of
answer is one `Objective` subclass registered with `register_objective`.
"""

from .base import Objective, objective_for, register_objective
from .classification import ClassificationObjective
from .generation import GenerationObjective

__all__ = ["ClassificationObjective", "GenerationObjective", "Objective", "objective_for", "register_objective"]
