"""Soft prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

`n_tokens` trainable input embeddings go before the frozen model's input; only they are trained,
with cross-entropy over the verbalizer words at the answer position: exactly what the soft family's
base (`family/soft.py`) does without overriding anything.
"""

from __future__ import annotations

from .base import register
from .family.soft import SoftPromptMethod


@register
class PromptTuning(SoftPromptMethod):
    name = "prompt-tuning"
    description = "Soft prompt tuning (Lester et al.): trainable input embeddings before the frozen model."
