"""Frozen backbones. A backbone tokenizes, embeds, scores label words behind a prompt, and generates."""

from .causal_lm import CausalLMBackbone, LabelWords, load_backbone
from .loading import ALIASES, resolve_model_source

__all__ = ["ALIASES", "CausalLMBackbone", "LabelWords", "load_backbone", "resolve_model_source"]
