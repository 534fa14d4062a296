"""Kinds of backbone and task (see base.py). Importing a kind's module registers it; one line per kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..artifact import ARTIFACT_JSON, read_artifact
from .base import Kind, Prepared, Scores, get_kind, kind_for, kind_of, kinds, register_kind
from .clip import ClipKind
from .text import TextKind

register_kind(TextKind())
register_kind(ClipKind())


def open_artifact(path: str | Path) -> tuple[Kind, dict[str, Any], dict[str, torch.Tensor]]:
    """An artifact's kind, prompt.json (brought to today's schema and checked) and tensors."""
    meta, tensors = read_artifact(path)
    kind = kind_of(meta)
    meta = kind.upgrade_meta(meta)
    kind.check_meta(meta, Path(path) / ARTIFACT_JSON)
    return kind, meta, tensors


__all__ = ["Kind", "Prepared", "Scores", "get_kind", "kind_for", "kind_of", "kinds", "open_artifact",
           "register_kind"]
