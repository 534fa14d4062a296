"""Learnable prompt modules. Each produces what a backbone consumes: input embeddings (soft prompts)
or, in later families, per-layer keys/values."""

from .soft import SoftPrompt

__all__ = ["SoftPrompt"]
