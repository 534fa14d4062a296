"""Learnable prompt modules. Each produces what a backbone consumes: input embeddings (soft prompts)
or, in later families, per-layer keys/values."""

from .soft import SoftPrompt, nearest_tokens

__all__ = ["SoftPrompt", "nearest_tokens"]
