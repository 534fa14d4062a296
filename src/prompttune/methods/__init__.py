"""Prompt-learning methods. Importing a method's module registers it; add one line per new method."""

from . import lopt, p_tuning, prompt_tuning, residual_prompt_tuning, zero_shot  # noqa: F401  (registration)
from .base import Method, MethodConfig, MethodResult, RunContext, available_methods, get_method, register

__all__ = ["Method", "MethodConfig", "MethodResult", "RunContext", "available_methods", "get_method", "register"]
