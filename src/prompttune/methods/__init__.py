"""Prompt-learning methods. Importing a method's module registers it; add one line per new method."""

from . import (  # noqa: F401  (registration: one line per method)
    ape,
    apo,
    autoprompt,
    bbt,
    cocoop,
    coop,
    dept,
    edit_search,
    evolution,
    evoprompt,
    fine_tune_head,
    instance_prompt,
    lopt,
    maple,
    multitask_prompt_tuning,
    opro,
    p_tuning,
    p_tuning_v2,
    pez,
    prefix_tuning,
    prompt_boosting,
    prompt_transfer,
    prompt_tuning,
    promptsrc,
    random_separators,
    residual_prompt_tuning,
    rlprompt,
    select,
    tpt,
    xprompt,
    zero_shot,
    zero_shot_clip,
)
from .base import Method, MethodConfig, MethodResult, RunContext, available_methods, get_method, register

__all__ = ["Method", "MethodConfig", "MethodResult", "RunContext", "available_methods", "get_method", "register"]
