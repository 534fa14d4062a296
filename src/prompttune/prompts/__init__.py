"""Learnable prompt modules. Each produces what a backbone consumes: input embeddings (soft prompts)
or, in later families, per-layer keys/values. `kinds` is the table of prompt kinds an artifact names
(`prompt_kind`): how each is checked, applied, saved, served and exported."""

from .kinds import PeftRows, PromptKind, get_prompt_kind, prompt_kinds, register_prompt_kind
from .soft import SoftPrompt, nearest_tokens

__all__ = ["PeftRows", "PromptKind", "SoftPrompt", "get_prompt_kind", "nearest_tokens", "prompt_kinds",
           "register_prompt_kind"]
