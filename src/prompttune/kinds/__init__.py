"""Kinds of backbone and task (see base.py). Importing a kind's module registers it; one line per kind."""

from __future__ import annotations

from .base import (
    Kind,
    Prepared,
    Scores,
    get_kind,
    kind_for,
    kind_for_model,
    kind_of,
    kinds,
    open_artifact,
    register_kind,
)
from .clip import ClipKind
from .generation import GenerationKind
from .text import TextKind

register_kind(TextKind())
register_kind(ClipKind())
register_kind(GenerationKind())

__all__ = ["Kind", "Prepared", "Scores", "get_kind", "kind_for", "kind_for_model", "kind_of", "kinds",
           "open_artifact", "register_kind"]
