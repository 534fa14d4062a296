"""The floor every result is reported beside: the task's template (and verbalizer), nothing learned."""

from __future__ import annotations

from .base import Method, MethodResult, RunContext, register


@register
class ZeroShot(Method):
    name = "zero-shot"
    description = "The task's template (and verbalizer) only, nothing learned: the baseline every method must beat."
    backbone_kinds = ("causal-lm", "encoder")  # an encoder's zero-shot: the nearest label word by cosine
    generative = True  # on a generative task: the template alone, answered by greedy generation

    def fit(self, ctx: RunContext) -> MethodResult:
        return MethodResult(prompt_kind="none", tensors={}, trainable_parameters=0)
