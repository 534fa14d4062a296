"""Frozen backbones. A backbone tokenizes and scores label words behind a prompt; a causal LM also
embeds and generates, an encoder pools and classifies through a head."""

from .causal_lm import CausalLMBackbone, DeltaPrompt, LabelWords
from .encoder import EncoderBackbone, EncoderPrompt
from .load import load_backbone, model_kind
from .loading import ALIASES, resolve_model_source

Backbone = CausalLMBackbone | EncoderBackbone
BACKBONE_TYPES = (CausalLMBackbone, EncoderBackbone)

__all__ = ["ALIASES", "BACKBONE_TYPES", "Backbone", "CausalLMBackbone", "DeltaPrompt", "EncoderBackbone",
           "EncoderPrompt", "LabelWords", "load_backbone", "model_kind", "resolve_model_source"]
